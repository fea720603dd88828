"""The live loss curve: a table node (step, loss) drawn by a plot series node in a plot chart node.

The nodes are ordinary MRML nodes: they are saved with the scene, the table can be exported as CSV, and the
chart is shown in a plot view of the layout (the widget asks Slicer's Plots module to show it).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import vtk

STEP_COLUMN = "step"
LOSS_COLUMN = "loss"


class LossCurve:
    """The nodes of one run's loss curve, created in ``scene`` on first use."""

    def __init__(self, scene: Any, name: str = "Training loss"):
        self.scene = scene
        self.name = name
        self.table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{name} table"))
        table = self.table_node.GetTable()
        for column_name in (STEP_COLUMN, LOSS_COLUMN):
            column = vtk.vtkDoubleArray()  # the plot series node draws numeric columns
            column.SetName(column_name)
            table.AddColumn(column)
        self.series_node = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(name))
        self.series_node.SetAndObserveTableNodeID(self.table_node.GetID())
        self.series_node.SetXColumnName(STEP_COLUMN)
        self.series_node.SetYColumnName(LOSS_COLUMN)
        self.series_node.SetPlotType(self.series_node.PlotTypeScatter)
        self.series_node.SetMarkerStyle(self.series_node.MarkerStyleNone)
        self.series_node.SetLineWidth(2)
        self.chart_node = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(f"{name} chart"))
        self.chart_node.AddAndObservePlotSeriesNodeID(self.series_node.GetID())
        self.chart_node.SetTitle(name)
        self.chart_node.SetXAxisTitle("step")
        self.chart_node.SetYAxisTitle("loss (log scale)")
        self.chart_node.SetYAxisLogScale(True)  # diffusion losses fall over orders of magnitude
        self.chart_node.SetLegendVisibility(False)

    def _columns(self) -> tuple[Any, Any]:
        table = self.table_node.GetTable()
        return table.GetColumnByName(STEP_COLUMN), table.GetColumnByName(LOSS_COLUMN)

    def __len__(self) -> int:
        return int(self.table_node.GetTable().GetNumberOfRows())

    def points(self) -> list[tuple[int, float]]:
        steps, losses = self._columns()
        return [(int(steps.GetValue(i)), float(losses.GetValue(i))) for i in range(steps.GetNumberOfTuples())]

    def _truncate_from(self, step: int) -> None:
        """Drop the points at ``step`` and after (a resumed run repeats the steps after its checkpoint)."""
        steps, losses = self._columns()
        keep = steps.GetNumberOfTuples()
        while keep and steps.GetValue(keep - 1) >= step:
            keep -= 1
        if keep != steps.GetNumberOfTuples():
            steps.SetNumberOfTuples(keep)
            losses.SetNumberOfTuples(keep)

    def _append(self, step: int, loss: float) -> None:
        self._truncate_from(step)
        steps, losses = self._columns()
        steps.InsertNextValue(float(step))
        losses.InsertNextValue(float(loss))

    def _changed(self) -> None:
        steps, losses = self._columns()
        steps.Modified()
        losses.Modified()
        self.table_node.GetTable().Modified()
        self.table_node.Modified()

    def add(self, step: int, loss: float) -> None:
        """One point (the mean loss of the steps since the last one); the views redraw."""
        self._append(step, loss)
        self._changed()

    def set_points(self, points: Iterable[tuple[int, float]]) -> None:
        """Replace the curve (e.g. with the history of a run that is resumed)."""
        steps, losses = self._columns()
        steps.SetNumberOfTuples(0)
        losses.SetNumberOfTuples(0)
        for step, loss in points:
            self._append(step, loss)
        self._changed()

    def remove(self) -> None:
        for node in (self.chart_node, self.series_node, self.table_node):
            if node is not None and self.scene.GetNodeByID(node.GetID()) is not None:
                self.scene.RemoveNode(node)
